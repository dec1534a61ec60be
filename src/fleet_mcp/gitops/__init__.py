"""GitOps: fleet.yaml in git is the desired state; syncs open proposals, approved proposals are applied."""
