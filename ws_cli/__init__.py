"""The ``ws`` command line (outer layer; imports the core libraries): ``main.py`` assembles the
parser from one module per command group (data, worldmodel, evaluation, distill, launch, policy,
teleop, hitl, mppi, expert, video), each with its parser and handlers; ``common.py`` holds what
they share."""
