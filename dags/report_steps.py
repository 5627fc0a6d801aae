"""Functions called by the weekday_reports example DAG."""


def publish(title):
    print(f"publishing {title}")
    return title
