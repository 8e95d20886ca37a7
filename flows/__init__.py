"""Prefect flows of cifras and the command-line program that runs them."""
