"""The command line: Typer parsing (``app``, ``common``, ``train``, ``serve``, ``machine``) and Rich rendering
(``render``). The only layer that parses arguments or renders tables; the console script is ``petseg_cli.cli.app:main``."""
