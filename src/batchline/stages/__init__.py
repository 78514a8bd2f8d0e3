"""The four stages. Each module has a pure core over Arrow data and a `run(task)`
that reads its inputs from storage, calls the core and commits its outputs.
Stages never import backends or the launcher.
"""
