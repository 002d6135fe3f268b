"""What runs inside worker processes: one handler module per queue, plus the built-in tasks in `system`."""
