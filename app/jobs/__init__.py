"""Jobs: the job service, where jobs run (executor), how one runs (runner), and their live output."""
