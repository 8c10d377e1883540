"""Placeholder until the report command lands (issue owner replaces this module)."""


def add_arguments(parser) -> None:
    pass


def main(args) -> int:
    from .errors import ConfigError
    raise ConfigError("asyncsgd report is not available yet")
