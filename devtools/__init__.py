"""Development tools: the run command, the embedded Redis, the local Bedrock-compatible server
and the process launcher that the run command, the tests and the benchmarks share.

They live in the repository and run from it (`python -m devtools.stack`, pytest, the
benchmarks); the installed package and the Docker image leave them out
(tests/test_production_package.py), and no production package imports them (the
`production-without-devtools` contract in pyproject.toml).
"""
