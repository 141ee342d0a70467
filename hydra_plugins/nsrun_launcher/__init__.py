"""nsrun's Hydra launchers: hydra-submitit-launcher's, plus a wait for every job and a failure report."""
