"""The user project under ``user_project/`` is run by pytester as a user's own test suite, never collected here."""

collect_ignore = ["user_project"]
