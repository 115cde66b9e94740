// Starts Swagger UI (served from the swagger-ui-py package: no CDN). The playground's API key, when this tab
// has one, is sent as the Bearer header with every request Swagger UI makes, the spec's included.
"use strict";
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#ui",
    validatorUrl: null,  // the default asks validator.swagger.io: no request leaves the service's origin
    requestInterceptor: (req) => {
      const key = sessionStorage.getItem("clipserve.key");
      if (key && !req.headers.Authorization) req.headers.Authorization = `Bearer ${key}`;
      return req;
    },
  });
});
