"""The commands evaluate, infer, compare, summary and decisions (``petseg machine``): each parses nothing,
prints nothing, and imports no other command."""
