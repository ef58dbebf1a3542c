from moac.cli import run

run()
