"""The leaves: errors, atomic files, the console and number formatting. They import nothing of petseg's."""
