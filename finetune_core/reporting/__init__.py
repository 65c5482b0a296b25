"""Charts, the HTML report, image galleries and run comparison."""
