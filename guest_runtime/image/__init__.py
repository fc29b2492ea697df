"""Recipes for project images: a Dockerfile, and a registry-free Debian root filesystem."""
