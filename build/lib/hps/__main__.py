"""``python -m hps``: the hps command line."""

from hps.search.cli import app

app(prog_name="hps")
