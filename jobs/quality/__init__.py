"""Data quality: Great Expectations suites per table (quality/), run after each write."""


class QualityError(RuntimeError):
    """A "fail" expectation failed: downstream work must not run on these tables."""
