"""What keeps a run honest: its command line checked, its folder owned, its settings recorded.

- :mod:`~fedvssl.guard.command_line`: the entry points' command line, checked before Hydra runs;
- :mod:`~fedvssl.guard.config_values`: typed config values, refused by their key;
- :mod:`~fedvssl.guard.run_folder`: a run's lock on its folder, its record held back until the
  run is accepted;
- :mod:`~fedvssl.guard.fingerprint`: the settings that decide a run, checked on resume.

docs/run_guarantees.md says what they promise.
"""
