"""``sample/`` holds what a user of the plugin writes: it runs through ``pytester`` in
``test_plugin.py`` (a pytest session of its own, as in the user's project), not here."""

collect_ignore = ["sample"]
