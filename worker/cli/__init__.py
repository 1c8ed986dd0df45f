"""The ``moodq`` command: its one list of subcommands (main), the commands for whoever runs workers
(operate) and for trying moodq end to end (trial). Producer-side commands live in producer.commands."""
