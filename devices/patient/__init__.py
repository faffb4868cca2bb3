"""The people's side: the phone (gateway, encryption, grants), the staff client, the HTTP client, verified reads, FHIR export, their CLI."""
