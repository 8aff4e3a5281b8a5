from photocap.cli import app

app(prog_name="photocap")
