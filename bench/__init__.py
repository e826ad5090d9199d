"""pobench harness: configuration, stages, generation backends, leaderboards and the CLI."""
