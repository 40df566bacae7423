"""Remote prepaid and meter-control gateway."""
