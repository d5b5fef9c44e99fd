"""Staff marking of the written answers: the database (store), final grades (final), the marking
web app (app), answer groups (groups), the question's evidence (evidence), spreadsheet round trip
(sheet) and LMS exports (lms)."""
