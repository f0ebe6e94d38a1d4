"""Pandera declarations of klrank's inputs and of the published report."""
