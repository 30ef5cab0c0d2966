// rhea request/reply: a dynamic receiver for replies, a request to /queues/Q with
// reply_to = its address; the test's pika server answers. Prints the reply as JSON.
// usage: node request_reply.js PORT QUEUE
const rhea = require("rhea");
const [port, queue] = [Number(process.argv[2]), process.argv[3]];
const container = rhea.create_container({ id: "rhea-rpc" });
const conn = container.connect({
  host: "127.0.0.1", port, username: "guest", password: "guest", reconnect: false,
});
const fail = (what) => { console.log(JSON.stringify({ error: String(what) })); process.exit(1); };
setTimeout(() => fail("timeout"), 20000);
conn.on("connection_error", (ctx) => fail(ctx.connection.error));
const receiver = conn.open_receiver({ source: { dynamic: true } });
receiver.on("receiver_open", (ctx) => {
  const address = ctx.receiver.source.address;
  console.log(JSON.stringify({ reply_to: address }));
  conn.open_sender(`/queues/${queue}`).send({
    body: "ping", reply_to: address, correlation_id: "rhea-1",
  });
});
receiver.on("message", (ctx) => {
  const m = ctx.message;
  const body = Buffer.isBuffer(m.body) ? m.body.toString() : (m.body && m.body.content ? Buffer.from(m.body.content).toString() : String(m.body));
  console.log(JSON.stringify({ body, correlation_id: m.correlation_id }));
  conn.close();
});
conn.on("connection_close", () => process.exit(0));
