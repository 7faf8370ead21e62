"""One module per ``unlearnbench`` subcommand; each defines ``add_parser(subparsers)`` (which sets
``func``). The CLI discovers them, so a new subcommand is one new file here."""
