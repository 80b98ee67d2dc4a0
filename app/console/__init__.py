"""The web console for operators and auditors, served under /ui."""
