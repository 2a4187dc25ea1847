"""Readers and writers of the workflow's data formats."""
