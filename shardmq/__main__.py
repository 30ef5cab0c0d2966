"""``python -m shardmq`` runs the CLI."""

from shardmq.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
