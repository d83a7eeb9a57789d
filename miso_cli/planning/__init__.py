"""Pure planning: the bound on what any schedule can reach."""
