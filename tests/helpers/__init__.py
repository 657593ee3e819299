"""Helpers shared by the test modules (imported as ``helpers.NAME``; never from a sibling test module)."""
