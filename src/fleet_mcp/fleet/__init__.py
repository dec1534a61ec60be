"""The fleet resource vocabulary (templates, modules, assignments, provider configs), git and live alike."""
