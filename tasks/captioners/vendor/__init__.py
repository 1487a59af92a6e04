"""Third-party code kept in the tree, each package with its licence file beside it."""
