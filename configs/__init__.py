"""The shipped experiments' configs, installed as the package jaxdl.configs."""
