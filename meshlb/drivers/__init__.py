"""What every Trio driver shares: the one deadline-or-kick loop."""
