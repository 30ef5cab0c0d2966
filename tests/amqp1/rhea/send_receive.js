// rhea sends N messages to /queues/Q (unsettled, waiting for each outcome), then
// receives them back from the same queue and prints one JSON line with what it saw.
// usage: node send_receive.js PORT QUEUE N
const rhea = require("rhea");
const [port, queue, count] = [Number(process.argv[2]), process.argv[3], Number(process.argv[4])];
const container = rhea.create_container({ id: "rhea-test" });
const result = { accepted: 0, received: [] };
const conn = container.connect({
  host: "127.0.0.1", port, username: "guest", password: "guest",
  hostname: "vhost:/", reconnect: false,
});
const fail = (what) => { console.log(JSON.stringify({ error: String(what) })); process.exit(1); };
setTimeout(() => fail("timeout"), 20000);
conn.on("connection_error", (ctx) => fail(ctx.connection.error));
conn.on("disconnected", (ctx) => { if (!result.done) fail("disconnected: " + (ctx.error || "")); });
const sender = conn.open_sender(`/queues/${queue}`);
let sent = 0;
sender.on("sendable", () => {
  while (sender.sendable() && sent < count) {
    sender.send({ body: `m${sent}`, application_properties: { n: sent }, durable: true });
    sent++;
  }
});
sender.on("accepted", () => {
  result.accepted++;
  if (result.accepted === count) {
    const receiver = conn.open_receiver({ source: `/queues/${queue}`, credit_window: 10 });
    receiver.on("message", (ctx) => {
      result.received.push([ctx.message.body, ctx.message.application_properties.n]);
      ctx.delivery.accept();
      if (result.received.length === count) {
        result.done = true;
        console.log(JSON.stringify(result));
        conn.close();
      }
    });
  }
});
sender.on("rejected", (ctx) => fail("rejected " + JSON.stringify(ctx.delivery.remote_state)));
conn.on("connection_close", () => process.exit(0));
