"""``python -m photocap``. Guarded so that spawned decode workers never re-run the CLI."""

from photocap.cli import app

if __name__ == "__main__":
    app(prog_name="photocap")
