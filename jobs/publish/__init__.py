"""Publishing for analysts and reporting teams: small-cell suppression, exports (CSV, XLSX,
Parquet), the HTML report, SQL access and the Thrift JDBC server (conf/base/publish.yaml)."""
