"""Outbound: the dispatcher claims due messages and hands them to their channel."""
