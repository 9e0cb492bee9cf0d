"""paxq package."""
