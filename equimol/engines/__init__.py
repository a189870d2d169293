"""Running a trained potential: one inference interface and the engines built on it."""
