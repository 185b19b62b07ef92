"""The cases, one module per kind of measurement; ``benchkit.registry``
lists them in the order the table prints them."""
