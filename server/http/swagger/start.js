// Starts Swagger UI on the document this server writes. A file, not an inline script: the page's
// Content-Security-Policy runs scripts from this origin only.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null, // else Swagger UI asks a public validator for a badge
});
