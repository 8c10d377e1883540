"""Placeholder until the bench command lands (issue owner replaces this module)."""


def add_arguments(parser) -> None:
    pass


def main(args) -> int:
    from .errors import ConfigError
    raise ConfigError("asyncsgd bench is not available yet")
