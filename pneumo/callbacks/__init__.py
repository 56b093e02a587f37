"""Lightning callbacks of pneumo."""
