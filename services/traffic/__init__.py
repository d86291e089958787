"""Traffic signals: hi-res controller logs in, live signal state, alarms and ATSPM performance measures out."""
