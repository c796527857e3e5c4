"""The search for a knowledge-critical subnetwork, one idea per module."""
