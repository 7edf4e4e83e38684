"""How the CLI runs the plan's jobs: its console/log-file logger, failure summaries, the watchdog that frees
the pool slots of dead runs, and the quarantine report. The layer above ens_assets.defs, below ens_assets.cli."""
