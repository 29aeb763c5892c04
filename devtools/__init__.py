"""Development tooling: the local and cluster stacks, the benches, sample events and `produce`.

Not packaged (the wheel and the run image carry `programuser_dagster` only): it runs from the
checkout, `python -m devtools ...` from the repository's root (the Makefile does), and the
tests import it like any other helper.
"""
