from moac.cli.main import run

run()
